"""The API's WSGI entry as it was before `gc.freeze()` (service/wsgi.py): the baseline of
`bench_api_load.py --unfrozen`, so both run in the same session."""

from service.app import create_app

app = create_app()
