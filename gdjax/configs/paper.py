"""The AlexNet paper's ImageNet recipe (Krizhevsky, Sutskever & Hinton 2012, sections 4-5).

    gdjax train --config=paper --config.dataset=folder:/data/imagenet --workdir=runs/alexnet

The paper variant (LRN, overlapping pooling, two-GPU grouping, N(0, 0.01) init) on 227×227
random crops with flips and PCA colour augmentation of 256×256 images with the mean image
subtracted; batch 128, ``alexnet_sgd`` (momentum 0.9, weight decay 5e-4) from lr 0.01,
divided by 10 when the validation error stops improving (three times in the paper), about 90
epochs; ten-crop evaluation. The paper reports 40.7% top-1 and 18.2% top-5 error (one model,
ten crops) on the ILSVRC-2012 validation set after five to six days on two GTX 580 GPUs.
"""

from gdjax.configs.base import base_config


def get_config():
    c = base_config()
    c.dataset = "folder:/data/imagenet"
    c.eval_split = "val"
    c.model.variant = "paper"
    c.input.augment = "alexnet"
    c.input.crop = 227
    c.input.pca_std = 0.1
    c.input.per_pixel_mean = True
    c.input.ten_crop = True
    c.input.worker_count = 8
    c.input.read_threads = 4
    c.batch_size = 128
    c.eval_batch_size = 128
    c.num_epochs = 90.0
    c.optimizer.name = "alexnet_sgd"
    c.optimizer.learning_rate = 0.01
    c.schedule.name = "plateau"
    c.schedule.patience = 2
    c.schedule.min_learning_rate = 1e-5
    c.mixed_precision = False
    c.log_every_steps = 100
    c.checkpoint_every_steps = 2000
    return c
