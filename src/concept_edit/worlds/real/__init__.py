"""The real-model world: any Stable Diffusion (1.x/2.x, SDXL) or other UNet text-to-image pipeline from the hub
or a local folder. It knows no ground truth and no judge of its own: its suites (`suites.py`: the papers'
evaluation prompts) name their judges (ImageNet classifier, NudeNet, CLIP), and attacks need the judge, prompts
and pairs from the user, as the papers' protocols do.
"""

from __future__ import annotations

from concept_edit.worlds.base import World


class RealWorld(World):
    name = "real"
    heads = ("imagenet", "nudity")

    def suites(self):
        from concept_edit.worlds.real.suites import REAL_SUITES

        return REAL_SUITES

    def describe_suite(self, name):
        from concept_edit.worlds.real.suites import REPORT_SENTENCES

        return REPORT_SENTENCES.get(name)


WORLD = RealWorld()
