"""Pure measures shared by training reports and evaluation (a layer below both): image fidelity and texture
(:mod:`maskray.measures.image`) and a self-supervised feature network (:mod:`maskray.measures.features`)."""
