"""Fake `modules.upscaler`, written from the host contract (A1111 1.10 / Forge).

`Upscaler.upscale(img, scale, selected_model)`: the target is width x scale by height x scale,
each rounded down to a multiple of 8. Up to three passes: stop once the image reaches the target
(on a later pass, or at once when the scale is not 1), stop when the interrupt flag is set, run
`do_upscale`, stop when it did not change the size. Finally resize with Lanczos to the target.
"""

import os

from PIL import Image

from modules import shared

LANCZOS = Image.Resampling.LANCZOS
NEAREST = Image.Resampling.NEAREST


class Upscaler:
    name = None
    model_path = None
    model_name = None
    model_url = None
    enable = True
    filter = None
    model = None
    user_path = None
    scalers: list
    tile = True

    def __init__(self, create_dirs=False):
        self.tile_size = shared.opts.ESRGAN_tile
        self.tile_pad = shared.opts.ESRGAN_tile_overlap
        self.device = shared.device
        self.scale = 1
        self.half = not shared.cmd_opts.no_half
        self.model_download_path = None
        if self.model_path is None and self.name:
            self.model_path = os.path.join(shared.models_path, self.name)
        if self.model_path and create_dirs:
            os.makedirs(self.model_path, exist_ok=True)

    def do_upscale(self, img, selected_model):
        return img

    def load_model(self, path):
        pass

    def upscale(self, img, scale, selected_model=None):
        self.scale = scale
        target_w = int(img.width * scale) // 8 * 8
        target_h = int(img.height * scale) // 8 * 8
        for attempt in range(3):
            reached = img.width >= target_w and img.height >= target_h
            if reached and (attempt > 0 or scale != 1):
                break
            if shared.state.interrupted:
                break
            before = img.size
            img = self.do_upscale(img, selected_model)
            if img.size == before:
                break
        if img.size != (target_w, target_h):
            img = img.resize((target_w, target_h), resample=LANCZOS)
        return img


class UpscalerData:
    def __init__(self, name, path, upscaler=None, scale=4, model=None, sha256=None):
        self.name = name
        self.data_path = path
        self.local_data_path = path
        self.scaler = upscaler
        self.scale = scale
        self.model = model
        self.sha256 = sha256


class UpscalerNone(Upscaler):
    name = "None"

    def __init__(self, dirname=None):
        super().__init__(False)
        self.scalers = [UpscalerData("None", None, self)]


class UpscalerLanczos(Upscaler):
    def __init__(self, dirname=None):
        super().__init__(False)
        self.name = "Lanczos"
        self.scalers = [UpscalerData("Lanczos", None, self)]

    def do_upscale(self, img, selected_model=None):
        return img.resize((int(img.width * self.scale), int(img.height * self.scale)), resample=LANCZOS)


class UpscalerNearest(Upscaler):
    def __init__(self, dirname=None):
        super().__init__(False)
        self.name = "Nearest"
        self.scalers = [UpscalerData("Nearest", None, self)]

    def do_upscale(self, img, selected_model=None):
        return img.resize((int(img.width * self.scale), int(img.height * self.scale)), resample=NEAREST)
