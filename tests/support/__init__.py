"""Helpers the tests share, imported as `from support.NAME import ...`; fixtures stay in conftest.

`exposition` parses scrapes, `waiting` waits on a condition with a deadline, `clock` is a wall clock
tests move by hand, `fake_api` serves the fake Gcore API, `exporter` runs the whole exporter in
process, `web` serves the web app alone, `tooling` finds external tools and renders deployments,
`mocking` adapts aioresponses.
"""
