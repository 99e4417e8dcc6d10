"""HTTP routes: views validate, call one service function, and map the outcome to HTTP."""
