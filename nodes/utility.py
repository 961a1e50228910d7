"""Frontend-only node types ComfyUI workflows contain: notes, reroutes, primitives.

They never execute.  When the graph is compiled, a reroute passes its input
through and a PrimitiveNode turns into the literal value it holds, exactly as
ComfyUI's frontend does before queueing.
"""
from engine.schema import Input, Node, Output


class Note(Node):
    TYPE = "Note"
    CATEGORY = "utils"
    DESCRIPTION = "A text note on the canvas. Never runs."
    VIRTUAL = True
    INPUTS = (Input("text", "STRING", default="", multiline=True),)


class MarkdownNote(Note):
    TYPE = "MarkdownNote"
    DESCRIPTION = "A note rendered as Markdown. Never runs."


class Reroute(Node):
    TYPE = "Reroute"
    CATEGORY = "utils"
    DESCRIPTION = "A point a wire passes through, to tidy the canvas."
    VIRTUAL = True
    INPUTS = (Input("input", "*", force_input=True),)
    OUTPUTS = (Output("output", "*"),)

    @classmethod
    def virtual_output(cls, node, slot):
        link = node.links.get("input")
        return ("link", link) if link else None


class PrimitiveNode(Node):
    TYPE = "PrimitiveNode"
    DISPLAY_NAME = "Primitive"
    CATEGORY = "utils"
    DESCRIPTION = "One value feeding the widget inputs it is linked to (ComfyUI's PrimitiveNode)."
    VIRTUAL = True
    INPUTS = (Input("value", "*", tooltip="the value given to every linked widget"),)
    OUTPUTS = (Output("connect to widget input", "*"),)

    @classmethod
    def virtual_output(cls, node, slot):
        return ("value", node.values["value"]) if node.values.get("value") is not None else None
