"""digits-mlp: a small multilayer perceptron on flat 64-pixel digits."""

from functools import partial

from deploybench.zoo.data import digits
from deploybench.zoo.spec import Dense, ModelSpec

SPEC = ModelSpec(
    name="digits-mlp",
    description="MLP 64-128-64-10 on scikit-learn digits, input (N, 64)",
    input_shape=(64,),
    num_classes=10,
    layers=[Dense(128, "relu"), Dense(64, "relu"), Dense(10)],
    data=partial(digits, (64,)),
)
