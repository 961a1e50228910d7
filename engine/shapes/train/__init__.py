"""Training of the models Loom ships (``assets/models/``), from the procedural shapes generator alone.

One command per model, each deterministic from its seeds, printing progress and writing a JSON-lines
log under ``build/shapes/``::

    python -m engine.shapes.train vae          # KL autoencoder (build/shapes/vae.safetensors)
    python -m engine.shapes.train t2i          # UNet + text encoder -> checkpoints/loom-shapes.safetensors
    python -m engine.shapes.train controlnet   # Canny ControlNet -> controlnet/loom-shapes-canny.safetensors
    python -m engine.shapes.train lora         # stripes LoRA -> loras/loom-shapes-stripes.safetensors
    python -m engine.shapes.train upscaler     # 2x Real-ESRGAN compact -> upscale_models/loom-shapes-2x.safetensors
    python -m engine.shapes.train all          # the five in order

``--device cuda`` (default: cuda when available) and ``--steps N`` (quick trials) apply to each.
"""
