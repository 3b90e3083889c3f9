"""Every parameter model of the Captum methods, in one module per family.

- :mod:`.pieces`: the shared pieces (baselines, integration paths, sampling, batching,
  the noise tunnel, feature masks, the layer or neuron), each contributing keyword
  arguments to the Captum constructor and to ``attribute``;
- :mod:`.primary`, :mod:`.layer`, :mod:`.neuron`: one model per method of
  :mod:`esegeta_captum.primary`, :mod:`~esegeta_captum.layer` and
  :mod:`~esegeta_captum.neuron`, the list of pieces it takes plus its own options (set as
  the method's ``Params`` by ``CaptumMethod[Model]``); a layer or neuron version of a
  primary method takes that method's model plus the layer or the neuron.

The models carry no docstring: it would become their JSON Schema's description, and
the method's docstring already says what the method does.
"""
