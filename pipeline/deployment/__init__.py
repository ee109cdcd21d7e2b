"""Deploy: engines (or graphs) with their manifest, laid out for the runtimes people serve with."""
