"""xv.models.kind: classifier or segmenter, decided by the core, each module's mode kept."""
import xcam_viz as xv
from xcam_viz.models.kind import is_segmenter


def test_classifier_and_segmenter_and_modes_are_kept():
    classifier = xv.models.build("smallcnn", num_classes=2)
    segmenter = xv.models.build("unet", num_classes=2)
    assert not is_segmenter(classifier, (3, 64, 64)) and is_segmenter(segmenter, (3, 64, 64))
    classifier.train()
    frozen = next(m for m in classifier.modules() if "BatchNorm" in type(m).__name__)
    frozen.eval()                                   # a frozen batch norm inside a training model
    is_segmenter(classifier, (3, 64, 64))
    assert classifier.training and not frozen.training
