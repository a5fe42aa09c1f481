"""What the embedded world knows about a batch of rendered pairs (the generator's latents)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor


@dataclass
class Scene:
    """Everything the embedded world knows about a batch of rendered pairs.

    Label maps use the face-parsing class ids; person slot 0 is the main (largest, front-most)
    person, -1 in `person_index` means background. Per-person tensors have `max_people` slots;
    `person_active` says which are used.
    """

    seeds: Tensor  # [B] int64, CPU
    labels: Tensor  # [B, H, W] int64: parse of the photo
    character: Tensor  # [B, 3, H, W] in [-1, 1]: the character rendering of the same scene
    character_labels: Tensor  # [B, H, W] int64: parse of the character rendering
    person_index: Tensor  # [B, H, W] int64: person slot drawn at each photo pixel, -1 = none
    character_person_index: Tensor  # [B, H, W] int64: the same for the character rendering
    background: Tensor  # [B, 3, H, W] in [-1, 1]: the photo's background without people
    num_people: Tensor  # [B] int64
    person_active: Tensor  # [B, P] bool
    skin_lab: Tensor  # [B, P, 3] base CIELAB skin tone (exact mean over the person's skin)
    person_ita: Tensor  # [B, P] ITA degrees of each person's skin (0 where inactive)
    skin_ita: Tensor  # [B] ITA of the main person (slot 0)
    face_fraction: Tensor  # [B, P] face width / frame height (framing: 0.6 close-up ... 0.08)
    head_box: Tensor  # [B, P, 4] approximate x0, y0, x1, y1 (px) of head and hair
    hair_color: Tensor  # [B, P] int64 index into HAIR_COLORS
    hair_style: Tensor  # [B, P] int64 index into HAIR_STYLES
    hair_lab: Tensor  # [B, P, 3] base CIELAB hair colour of each person in the photo
    character_skin_lab: Tensor  # [3] the character's fixed skin tone (exact mean of its skin)

    def to(self, device: torch.device | str) -> Scene:
        """A copy with every tensor except `seeds` on `device`."""
        moved = {
            f.name: getattr(self, f.name) if f.name == "seeds" else getattr(self, f.name).to(device)
            for f in fields(self)
        }
        return Scene(**moved)

    @property
    def batch_size(self) -> int:
        return int(self.seeds.shape[0])
