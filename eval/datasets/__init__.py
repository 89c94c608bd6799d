"""Datasets for weak localisation, each read into one kind of example.

An example is a dict of numpy values:
  image:           uint8 (H, W, 3), the image at the size the model sees (after resize or crop);
  label:           int, the ground-truth class (-1 when unknown);
  boxes:           int32 (n, 4), ground-truth boxes in pixels of ``image``, inclusive (ymin, xmin, ymax, xmax);
                   n = 0 when the image has no boxes (it is then explained but not scored);
  boxes_original:  int32 (n, 4), the same boxes in pixels of the original image;
  original_size:   (H0, W0) of the original image;
  image_id:        str, unique within the dataset (the file name where there is one).
Loaders yield examples in a fixed order, so that a resumed run sees the same images in the same batches.
"""
