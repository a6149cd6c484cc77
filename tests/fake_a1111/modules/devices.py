import torch

device = torch.device("cpu")
device_esrgan = torch.device("cpu")


def torch_gc():
    pass
