import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402

from minifm.plotting import confusion_matrix, image_grid, plot_heatmap, show_images  # noqa: E402


def test_confusion_matrix_counts_pairs():
    predictions = torch.tensor([0, 1, 1, 2, 2, 2])
    labels = torch.tensor([0, 1, 2, 2, 2, 0])
    matrix = confusion_matrix(predictions, labels, num_classes=3)
    assert matrix.tolist() == [[1, 0, 1], [0, 1, 0], [0, 1, 2]]


def test_image_grid_places_images_in_raster_order():
    images = torch.arange(6).float().view(6, 1, 1, 1).expand(6, 1, 2, 2) / 10
    grid = image_grid(images, ncols=4, padding=1)
    assert grid.shape == (1, 2 * 3 + 1, 4 * 3 + 1)
    assert grid[0, 1, 1] == 0.0
    assert grid[0, 1, 4] == images[1, 0, 0, 0]
    assert grid[0, 4, 4] == images[5, 0, 0, 0]
    assert grid[0, 4, 7] == 1.0  # the empty seventh cell stays white


def test_figures_have_one_axis_per_image():
    fig = show_images(torch.rand(5, 3, 4, 4), titles=list("abcde"), ncols=3)
    assert len(fig.axes) == 6
    assert fig.axes[4].get_title() == "e"
    heatmap = plot_heatmap(torch.eye(3), annotate=True)
    assert len(heatmap.axes[0].texts) == 9
