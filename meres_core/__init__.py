"""MERES: Multi-Expression guidance for Referring Expression Segmentation."""
