"""Face-parsing BiSeNet (zllrunning layout, 19 CelebAMask-HQ classes) and its class table."""

from __future__ import annotations

# Class ids of the public face-parsing checkpoint (79999_iter.pth, CelebAMask-HQ order):
# label = position + 1 in the dataset's `atts` list, 0 = background.
CELEBAMASK_CLASSES: tuple[str, ...] = (
    "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear",
    "ear_r", "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat",
)  # fmt: skip
CLASS_ID = {name: idx for idx, name in enumerate(CELEBAMASK_CLASSES)}

# METHOD.md section 1: the head is every face part, the neck and the hair (ids 1-14 and 17);
# never background (0), necklace (15) or cloth (16). Hat (18) is optional.
HEAD_CLASS_IDS: tuple[int, ...] = (*range(1, 15), 17)
SKIN_CLASS_IDS: tuple[int, ...] = (CLASS_ID["skin"], CLASS_ID["nose"])
