"""Lightning modules, losses, EMA and callbacks for training the stylization network."""
