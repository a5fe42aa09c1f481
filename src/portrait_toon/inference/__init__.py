"""Running a trained stylization network on user images of any size."""
