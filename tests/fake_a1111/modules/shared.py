"""Fake `modules.shared`: options, command-line options, the job state and the upscaler list."""

import argparse
import sys

import torch

from modules import paths_internal


class OptionInfo:
    def __init__(
        self, default=None, label="", component=None, component_args=None, onchange=None, section=None, **kwargs
    ):
        self.default, self.label, self.component, self.component_args = default, label, component, component_args
        self.section = section
        self.comment_after = ""

    def info(self, text):
        self.comment_after = text
        return self


class Options:
    """Values live in `data`; a registered option not set yet reads as its default; else AttributeError."""

    def __init__(self, labels):
        object.__setattr__(self, "data_labels", dict(labels))
        object.__setattr__(self, "data", {key: info.default for key, info in labels.items()})

    def add_option(self, key, info):
        self.data_labels[key] = info
        self.data.setdefault(key, info.default)

    def __getattr__(self, item):
        data = object.__getattribute__(self, "data")
        if item in data:
            return data[item]
        labels = object.__getattribute__(self, "data_labels")
        if item in labels:
            return labels[item].default
        raise AttributeError(item)

    def __setattr__(self, key, value):
        self.data[key] = value


_builtin = {
    "ESRGAN_tile": OptionInfo(192, "Tile size for ESRGAN upscalers.", section=("upscaling", "Upscaling")),
    "ESRGAN_tile_overlap": OptionInfo(8, "Tile overlap for ESRGAN upscalers.", section=("upscaling", "Upscaling")),
    "enable_upscale_progressbar": OptionInfo(True, "Show a progress bar in the console for tiled upscaling."),
}
opts = Options(_builtin)


class State:
    interrupted = False
    skipped = False

    def interrupt(self):
        self.interrupted = True

    def skip(self):
        self.skipped = True


state = State()
cmd_opts = argparse.Namespace(no_half=False)
device = torch.device("cpu")
models_path = paths_internal.models_path
script_path = paths_internal.script_path
sd_upscalers = []
progress_print_out = sys.stdout
