"""Expression classes and the JAFFE expression codes."""

# Canonical class order: alphabetical, as used by every model output, metric and report.
CLASS_NAMES: tuple[str, ...] = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")
# With contempt, the 8th class of FER+, AffectNet and CK+ (kept as a class where a dataset has it).
ALL_CLASS_NAMES: tuple[str, ...] = tuple(sorted((*CLASS_NAMES, "contempt")))

# JAFFE expression codes (the two letters before the index in ``KA.AN1.39.tiff``).
JAFFE_CODES: dict[str, str] = {
    "AN": "anger",
    "DI": "disgust",
    "FE": "fear",
    "HA": "happiness",
    "NE": "neutral",
    "SA": "sadness",
    "SU": "surprise",
}

# The ten JAFFE posers and the image count of the official release.
JAFFE_SUBJECTS: tuple[str, ...] = ("KA", "KL", "KM", "KR", "MK", "NA", "NM", "TM", "UY", "YM")
JAFFE_N_IMAGES = 213

# Names accepted for each class by data=folder and data=manifest (case-insensitive).
CLASS_ALIASES: dict[str, str] = {
    "anger": "anger", "angry": "anger",
    "contempt": "contempt", "contemptuous": "contempt",
    "disgust": "disgust", "disgusted": "disgust",
    "fear": "fear", "fearful": "fear", "afraid": "fear",
    "happiness": "happiness", "happy": "happiness",
    "neutral": "neutral",
    "sadness": "sadness", "sad": "sadness",
    "surprise": "surprise", "surprised": "surprise",
}
