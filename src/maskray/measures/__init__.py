"""Pure measures shared by training reports and evaluation (a layer below both): image fidelity and texture
(:mod:`maskray.measures.image`), a self-supervised feature network (:mod:`maskray.measures.features`), the
seeded MONAI segmenter (:mod:`maskray.measures.segmenter`), lesion detection (:mod:`maskray.measures.detection`)
and the per-image mask check of generated images (:mod:`maskray.measures.mask_check`)."""
