"""The procedural "shapes" world: a scene generator (`scene`) and an OpenCV evaluator (`evaluate`)."""
