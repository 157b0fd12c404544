"""digits-cnn: two convolutions and a dense head on 8x8x1 digits (about 85k weights)."""

from functools import partial

from deploybench.zoo.data import digits
from deploybench.zoo.spec import Conv2D, Dense, Flatten, MaxPool2D, ModelSpec, Training

SPEC = ModelSpec(
    name="digits-cnn",
    description="CNN conv32-conv64-pool-dense64-10 on scikit-learn digits, input (N, 8, 8, 1)",
    input_shape=(8, 8, 1),
    num_classes=10,
    layers=[
        Conv2D(32, 3, "relu"),
        Conv2D(64, 3, "relu"),
        MaxPool2D(2),
        Flatten(),
        Dense(64, "relu"),
        Dense(10),
    ],
    data=partial(digits, (8, 8, 1)),
    training=Training(epochs=20),
)
