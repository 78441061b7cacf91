"""The backend: place tensors in SRAM, schedule vector work on units, emit a Program."""
