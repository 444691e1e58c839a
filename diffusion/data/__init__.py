"""Datasets of captioned images.

Every dataset here is a `torch.utils.data.Dataset` built by Hydra as
``instantiate(cfg.dataset, split="train" | "val")`` and follows one contract:

- ``dataset[i]`` returns ``{"image": FloatTensor[3, H, W] in [-1, 1], "text": str, "label": int}``
  (``label`` is -1 when the dataset has no classes);
- ``dataset.resolution`` (int, H == W), ``dataset.num_classes`` (int or None),
  ``dataset.class_names`` (list of str or None);
- ``dataset.all_captions()`` yields every caption the split can produce (used to build the
  tokenizer's vocabulary without decoding images).

Missing or unusable data raises `diffusion.errors.UserError` with one line that says where the
code looked and what to do.
"""
