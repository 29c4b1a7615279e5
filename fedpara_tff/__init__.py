"""TensorFlow Federated wiring for FedPara: model adapters, aggregators, processes.

Imports TFF; the Keras layers themselves live in `keras_layers`, which never does.
"""
