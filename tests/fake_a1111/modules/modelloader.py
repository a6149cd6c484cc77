"""Fake `modules.modelloader.load_upscalers`, written from the host contract.

Only *direct* subclasses of `Upscaler` are found (newest copy of a class wins when a script was
loaded twice); each is built as `cls(cmd_opts.<name without 'upscaler', lower case>_models_path)`
with no error handling (an exception stops the host's start-up); every instance's `scalers` go
into `shared.sd_upscalers`, sorted by lower-case name with None/Lanczos/Nearest first.
"""

import os

from modules import shared
from modules.upscaler import Upscaler, UpscalerLanczos, UpscalerNearest, UpscalerNone


def friendly_name(file):
    return os.path.splitext(os.path.basename(file))[0]


def load_upscalers():
    newest = {}
    for cls in reversed(Upscaler.__subclasses__()):
        newest.setdefault(str(cls), cls)
    options = vars(shared.cmd_opts)
    found = []
    for cls in reversed(list(newest.values())):
        path = options.get(f"{cls.__name__.lower().replace('upscaler', '')}_models_path")
        scaler = cls(path)
        scaler.user_path = path
        scaler.model_download_path = path or scaler.model_path
        found += scaler.scalers
    builtin = (UpscalerNone, UpscalerLanczos, UpscalerNearest)
    shared.sd_upscalers = sorted(found, key=lambda data: "" if isinstance(data.scaler, builtin) else data.name.lower())
