"""The Conference API transport: the client, its retry policy, the codes, the body hand-off."""
