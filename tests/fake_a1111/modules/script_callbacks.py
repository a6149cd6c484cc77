"""Fake `modules.script_callbacks`: only the settings callback an upscaler extension uses."""

_ui_settings = []


def on_ui_settings(callback):
    _ui_settings.append(callback)


def ui_settings_callback():
    for callback in list(_ui_settings):
        callback()


def clear_callbacks():
    _ui_settings.clear()
