"""Small AlexNet on CIFAR-10 with the paper's optimizer and divide-by-10-on-plateau.

    gdjax train --config=cifar10 --config.dataset=cifar10:/data/cifar-10-python.tar.gz

Pad-and-crop and mirror augmentation, batch 128, ``alexnet_sgd`` (momentum 0.9, weight decay
5e-4) from lr 0.01, divided by 10 whenever the test error stops improving, 60 epochs.
"""

from gdjax.configs.base import base_config


def get_config():
    c = base_config()
    c.dataset = "cifar10:cifar-10-python.tar.gz"
    c.model.variant = "small"
    c.input.augment = "small"
    c.input.pad = 4
    c.input.flip = True
    c.batch_size = 128
    c.num_epochs = 60.0
    c.optimizer.name = "alexnet_sgd"
    c.optimizer.learning_rate = 0.01
    c.schedule.name = "plateau"
    c.schedule.patience = 3
    c.schedule.min_learning_rate = 1e-5
    return c
