from robaudit.cli import main

raise SystemExit(main())
