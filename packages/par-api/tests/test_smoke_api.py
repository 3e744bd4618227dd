import par_api


def test_version():
    assert par_api.__version__ == "0.1.0"
