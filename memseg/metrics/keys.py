"""Metric names, in one place: the trainer, Tune's ``metric=``, MLflow and the promotion gate import these."""

IMAGE_AUROC = "image_auroc"
PIXEL_AUROC = "pixel_auroc"
PIXEL_AUPRO = "pixel_aupro"
PIXEL_F1_MAX = "pixel_f1_max"
IMAGE_F1_MAX = "image_f1_max"

VAL_PREFIX = "val_"
TEST_PREFIX = "test_"

VAL_IMAGE_AUROC = VAL_PREFIX + IMAGE_AUROC
VAL_PIXEL_AUROC = VAL_PREFIX + PIXEL_AUROC
VAL_PIXEL_AUPRO = VAL_PREFIX + PIXEL_AUPRO
TEST_IMAGE_AUROC = TEST_PREFIX + IMAGE_AUROC
TEST_PIXEL_AUROC = TEST_PREFIX + PIXEL_AUROC
TEST_PIXEL_AUPRO = TEST_PREFIX + PIXEL_AUPRO

TRAIN_LOSS = "train_loss"
STEP = "step"
