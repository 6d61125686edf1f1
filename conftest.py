# pytester runs inner pytest sessions for the tests of the plugin itself.
pytest_plugins = ["pytester"]
