"""Fine-tuning: a LoRA on a server's own pictures (lora.py) and the prompt expander from members' picks
(expander.py). Runs from the CLI (`python -m bot train …`), never inside the bot process."""
