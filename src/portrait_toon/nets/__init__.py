"""Pure nn.Modules, one architecture a file, each able to load its public checkpoint.

Imports nothing of the project.
"""
