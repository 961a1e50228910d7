"""Test-only node types for engine behaviour tests (like ComfyUI's testing-pack)."""
import time
from collections import Counter

from engine.registry import Registry
from engine.schema import Input, Node, NodeOutput, Output

RUNS: Counter = Counter()


class TConst(Node):
    TYPE = "TConst"
    INPUTS = (Input("value", "INT", default=0, min=-1000, max=1000),)
    OUTPUTS = (Output("INT", "INT"),)

    def execute(self, value):
        RUNS[(self.TYPE, value)] += 1
        return (value,)


class TAdd(Node):
    TYPE = "TAdd"
    INPUTS = (Input("a", "INT", force_input=True), Input("b", "INT", force_input=True))
    OUTPUTS = (Output("INT", "INT"),)

    def execute(self, a, b):
        RUNS[(self.TYPE, a, b)] += 1
        return (a + b,)


class TSeeded(Node):
    TYPE = "TSeeded"
    INPUTS = (Input("x", "INT", force_input=True), Input("seed", "INT", default=0, min=0, max=2**64 - 1,
                                                          control_after_generate=True))
    OUTPUTS = (Output("INT", "INT"),)

    def execute(self, x, seed):
        RUNS[(self.TYPE, x, seed)] += 1
        return (x * 1000 + seed % 1000,)


class TOut(Node):
    TYPE = "TOut"
    OUTPUT_NODE = True
    INPUTS = (Input("value", "*"),)

    def execute(self, value):
        RUNS[(self.TYPE, repr(value))] += 1
        return NodeOutput((), {"value": [value]})


class TSwitch(Node):
    TYPE = "TSwitch"
    INPUTS = (Input("use_a", "BOOLEAN", default=True), Input("a", "INT", lazy=True, force_input=True),
              Input("b", "INT", lazy=True, force_input=True))
    OUTPUTS = (Output("INT", "INT"),)

    def check_lazy(self, use_a, a=None, b=None):
        return ["a"] if use_a else ["b"]

    def execute(self, use_a, a=None, b=None):
        return (a if use_a else b,)


class TFail(Node):
    TYPE = "TFail"
    INPUTS = (Input("x", "INT", force_input=True),)
    OUTPUTS = (Output("INT", "INT"),)

    def execute(self, x):
        raise ValueError(f"cannot handle {x}")


class TSlow(Node):
    TYPE = "TSlow"
    INPUTS = (Input("x", "INT", force_input=True), Input("steps", "INT", default=50, min=1, max=1000))
    OUTPUTS = (Output("INT", "INT"),)

    def execute(self, x, steps):
        for i in range(steps):
            time.sleep(0.01)
            self.ctx.progress((i + 1) / steps)
        RUNS[(self.TYPE, x)] += 1
        return (x,)


class TVolatile(Node):
    TYPE = "TVolatile"
    INPUTS = (Input("x", "INT", force_input=True),)
    OUTPUTS = (Output("INT", "INT"),)

    @classmethod
    def fingerprint(cls, **_):
        return float("nan")

    def execute(self, x):
        RUNS[(self.TYPE, x)] += 1
        return (x,)


class TImage(Node):
    """A float output of a given size, to test the byte-bounded cache."""
    TYPE = "TImage"
    INPUTS = (Input("size", "INT", default=16, min=1, max=4096),)
    OUTPUTS = (Output("IMAGE", "IMAGE"),)

    def execute(self, size):
        import torch
        RUNS[(self.TYPE, size)] += 1
        return (torch.zeros(1, size, size, 3),)


def registry() -> Registry:
    import nodes.image
    import nodes.utility
    import sys

    r = Registry()
    r.register_module(sys.modules[__name__], "test")
    r.register_module(nodes.utility, "builtin")
    r.register_module(nodes.image, "builtin")
    return r
