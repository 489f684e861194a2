"""Pattern generators (bricks, tiles, shapes, gradients). All tile seamlessly."""
