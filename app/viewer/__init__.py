"""The slide viewer: the view widget, its tile loader, the overview and the sample-slide download."""
