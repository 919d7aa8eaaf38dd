"""The default run: small AlexNet on the embedded 5,000-image MNIST subset.

    gdjax train                     # about 80 s on a 2-core CPU
    gdjax train --workdir=runs/mnist --config.num_epochs=20

Mini-batch SGD with momentum 0.9 (batch 64, lr 0.01, divided by 10 after epoch 8), dropout
0.25 on the hidden fc layers, pad-and-crop augmentation, 10 epochs of the 4,000 training
digits. Expected: test error about 1.8% (accuracy about 98%) on the 1,000 held-out digits.
"""

from gdjax.configs.base import base_config


def get_config():
    c = base_config()
    c.dataset = "mnist5k"
    c.model.variant = "small"
    c.model.dropout_rate = 0.25
    c.input.augment = "small"
    c.input.pad = 2
    c.input.flip = False
    c.batch_size = 64
    c.num_epochs = 10.0
    c.optimizer.name = "momentum"
    c.optimizer.learning_rate = 0.01
    c.schedule.name = "step"
    c.schedule.step_epochs = (8,)
    c.log_every_steps = 25
    return c
