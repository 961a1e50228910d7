"""Primitive value nodes (ComfyUI's ``nodes_primitive.py`` names): one value out."""
from engine.schema import Input, Node, Output

INT_LIMIT = 2**63 - 1


class PrimitiveInt(Node):
    TYPE = "PrimitiveInt"
    DISPLAY_NAME = "Int"
    CATEGORY = "utils/primitive"
    INPUTS = (Input("value", "INT", default=0, min=-INT_LIMIT, max=INT_LIMIT, control_after_generate=True),)
    OUTPUTS = (Output("INT", "INT"),)

    def execute(self, value):
        return (value,)


class PrimitiveFloat(Node):
    TYPE = "PrimitiveFloat"
    DISPLAY_NAME = "Float"
    CATEGORY = "utils/primitive"
    INPUTS = (Input("value", "FLOAT", default=0.0, min=-1e308, max=1e308),)
    OUTPUTS = (Output("FLOAT", "FLOAT"),)

    def execute(self, value):
        return (value,)


class PrimitiveString(Node):
    TYPE = "PrimitiveString"
    DISPLAY_NAME = "String"
    CATEGORY = "utils/primitive"
    INPUTS = (Input("value", "STRING", default=""),)
    OUTPUTS = (Output("STRING", "STRING"),)

    def execute(self, value):
        return (value,)


class PrimitiveStringMultiline(PrimitiveString):
    TYPE = "PrimitiveStringMultiline"
    DISPLAY_NAME = "String (Multiline)"
    INPUTS = (Input("value", "STRING", default="", multiline=True),)


class PrimitiveBoolean(Node):
    TYPE = "PrimitiveBoolean"
    DISPLAY_NAME = "Boolean"
    CATEGORY = "utils/primitive"
    INPUTS = (Input("value", "BOOLEAN", default=False),)
    OUTPUTS = (Output("BOOLEAN", "BOOLEAN"),)

    def execute(self, value):
        return (value,)
