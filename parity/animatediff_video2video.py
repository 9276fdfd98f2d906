"""AnimateDiff video-to-video adapter for the harness: AnimateDiff's tiny fixtures saved as an
AnimateDiffVideoToVideoPipeline, called with a synthetic moving video (frames larger than the output and of another
aspect ratio, so the resize does work) and a strength. Random draws, in diffusers' order: one VAE posterior sample per
encoded chunk, the add-noise draw, then (eta > 0) DDIM's variance noise per step.
"""

from __future__ import annotations

from .animatediff import PRESETS as T2V_PRESETS
from .animatediff import AnimateDiffAdapter, make_components
from .fixtures import synthetic_image

# - animatediff-v2v-tiny: animatediff-tiny's models, 4 frames of 24x16 pixels (non-square), strength 0.7 (2 of 3
#   steps run), decoded and encoded 3 frames at a time (two chunks, two posterior draws);
# - animatediff-v2v-tiny-3level: animatediff-tiny-3level's models, 6 frames of 40x24, strength 1.0, DDIM eta 0.5.
PRESETS: dict[str, dict] = {
    "animatediff-v2v-tiny": {**T2V_PRESETS["animatediff-tiny"],
                             "run": dict(height=16, width=24, frames=4, guidance_scale=7.5, strength=0.7,
                                         decode_chunk_size=3)},
    "animatediff-v2v-tiny-3level": {**T2V_PRESETS["animatediff-tiny-3level"],
                                    "run": dict(height=24, width=40, frames=6, guidance_scale=6.0, strength=1.0,
                                                eta=0.5, decode_chunk_size=4)},
}


class AnimateDiffVideoToVideoAdapter(AnimateDiffAdapter):
    pipeline = "AnimateDiffVideoToVideoPipeline"
    presets = PRESETS
    reference_noise_modules = (
        "diffusers.models.autoencoders.vae",
        "diffusers.pipelines.animatediff.pipeline_animatediff_video2video",
        "diffusers.schedulers.scheduling_ddim",
    )
    our_noise_modules = ("mindport.pipelines.animatediff_video2video", "mindport.schedulers.scheduling_ddim")

    def make_fixture(self, spec: dict, seed: int):
        from diffusers import AnimateDiffVideoToVideoPipeline

        return AnimateDiffVideoToVideoPipeline(**make_components(spec, seed))

    def call_kwargs(self, settings: dict) -> dict:
        w, h, seed = settings["width"], settings["height"], settings["seed"]
        kwargs = super().call_kwargs(settings)
        del kwargs["num_frames"]  # the video's length
        video = [synthetic_image(w + w // 2 + 5, h + h // 3 + 3, seed + i) for i in range(settings["frames"])]
        return dict(kwargs, video=video, strength=float(settings.get("strength", 0.8)))


ADAPTER = AnimateDiffVideoToVideoAdapter()
