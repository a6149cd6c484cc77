"""Fake paths: the tests point `models_path` at a temporary folder before the host starts."""

import os

script_path = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
data_path = script_path
models_path = os.path.join(data_path, "models")
extensions_dir = os.path.join(data_path, "extensions")
