"""The pipeline's Prefect tasks, one thin module per stage; the work they run lives in the packages named for it."""
