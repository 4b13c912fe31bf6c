"""Every network a ticket can be drawn from: the `model.name` registry and the architectures any task may use."""
