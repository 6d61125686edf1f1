# This project's harness (orchestrator/plugin.py) is loaded here, for this
# project's runs only: it is not a pytest11 entry point, which would load it,
# SIGTERM handler included, into every pytest run of the environment.
# pytester runs inner pytest sessions for the tests of the plugin itself.
pytest_plugins = ["orchestrator.plugin", "pytester"]
