"""imagine-bot: seed text → GPT-2 prompts → Stable Diffusion 2 grid, on Discord and the command line."""

__version__ = "0.1.0"
