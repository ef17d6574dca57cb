"""The demo and its assets, outside the library's core (which never imports this package): the MobileNetV2
graph built from torchvision's ImageNet weights (:mod:`~ferroquant.examples.models`, weights read without torch by
:mod:`~ferroquant.examples.pretrained`), the real photos that ship in scikit-image / scikit-learn / matplotlib
(:mod:`~ferroquant.examples.photos`), and ``ferroquant demo`` (:mod:`~ferroquant.examples.demo`)."""
