"""Nothing here is a pytest test: ``fuzz_http.py`` is an atheris harness for long runs outside
CI (see README.md) and ``sansio.py`` is the driver that ``tests/test_fuzz.py`` imports."""

collect_ignore_glob = ["*.py"]
