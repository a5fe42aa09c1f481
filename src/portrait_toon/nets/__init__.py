"""Pure nn.Modules, one architecture a file; each loads its public checkpoint. Imports nothing of the project."""
