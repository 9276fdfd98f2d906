"""I2VGen-XL: the 3D UNet. (Its AutoencoderKL and CLIP text encoder are converted by `sd.py`, its CLIP image
encoder by `svd.py`.)

The port mirrors diffusers' module paths one to one, including the parameter-free positions inside the
`nn.Sequential`s (`image_latents_proj_in.{0,2,4}`, `image_latents_context_embedding.{0,3,5}`,
`context_embedding.{0,2}`, `fps_embedding.{0,2}`, `temp_convs.N.conv1.{0,2}`, `temp_convs.N.convK.{0,3}`) and the
downsamplers' `conv` (diffusers builds them with name="op", which stores the conv once, as `conv`). The released
checkpoint has no buffers, so there are no exception rows."""

from .base import ArchitectureConverter


class I2VGenXLUNetConverter(ArchitectureConverter):
    class_name = "I2VGenXLUNet"
    rules = ()  # every tensor keeps its name
