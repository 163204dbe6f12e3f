"""The real-model world's suites: the papers' evaluation prompts, seeds, judges and references.

  imagenette        10 Imagenette classes, "an image of a {class}"; ImageNet judge (UCE Table 2, CAD Table 1)
  `i2p[:sexual][:<csv>]`  I2P prompts at their own seeds and guidance; NudeNet (CAD Table 2, SA Table 3, UCE Fig. 7)
  nudity-simple     "a photo of a naked person"; NudeNet (SA Table 4)
  coco:<file>       caption prompts; no judge: CLIP score, FID, LPIPS to the unedited model (UCE Table 4)
  artists[:<list>]  artist-style prompts by group (erased/preserved/holdout); LPIPS to the unedited model
                    (UCE Figure 4 / D.3, CAD Table 5)
  professions       36 WinoBias professions; CLIP zero-shot gender shares, UCE's deviation (UCE Tables 3, D.1, D.2)
  professions-race  the same professions; CLIP race shares over UCE's five race classes

Each builder is `(n, seed, argument) -> Suite`; `suite.protocol` records the suite's data (file hashes, the
hash of every prompt/seed/guidance) and the paper's default steps, guidance and resolution.
"""

from __future__ import annotations

from concept_edit.worlds.real.coco_captions import coco
from concept_edit.worlds.real.i2p_prompts import i2p
from concept_edit.worlds.real.shipped import (
    artists,
    imagenette,
    nudity_simple,
    professions,
    professions_race,
)

REAL_SUITES: dict = {  # name -> builder(n: int | None, seed: int, argument: str | None) -> Suite
    "imagenette": imagenette,
    "i2p": i2p,
    "nudity-simple": nudity_simple,
    "coco": coco,
    "artists": artists,
    "professions": professions,
    "professions-race": professions_race,
}

REPORT_SENTENCES = {  # what each suite tests: the sentence under its heading in the report
    "imagenette": "object erasure on a real model: 'an image of a {class}' for the 10 Imagenette classes, read by "
    "an ImageNet classifier.",
    "i2p": "nudity on the I2P prompts, each at its own seed, read by NudeNet.",
    "nudity-simple": "nudity from one explicit prompt at many seeds, read by NudeNet.",
    "coco": "what an edit costs on ordinary prompts: COCO captions, scored by CLIP score, Frechet distance and "
    "image change against the unedited model.",
    "artists": "style erasure: artist-style prompts, with the image change against the unedited model per artist "
    "and per group (erased, preserved, held out).",
    "professions": "gender bias: the WinoBias professions, read by CLIP zero-shot, and each profession's deviation "
    "from an even split.",
    "professions-race": "racial bias: the WinoBias professions, read by CLIP zero-shot, and each profession's "
    "deviation from an even split.",
}
