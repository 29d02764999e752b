from datetime import timedelta
from fractions import Fraction
from resilient_circuit import CircuitProtectorPolicy, CircuitState

def custom_exception_handler(exc):
    """Only handle specific exceptions"""
    return isinstance(exc, (ConnectionError, TimeoutError))

def status_change_handler(policy, old_status, new_status):
    """Handle status transitions"""
    print(f"Circuit protector changed status: {old_status.name} -> {new_status.name}")

# Fully customized circuit protector
custom_protector = CircuitProtectorPolicy(
    cooldown=timedelta(minutes=1),  # 1-minute cooldown
    failure_limit=Fraction(3, 10),  # Trip after 30% failure rate
    success_limit=Fraction(5, 5),  # Close after 5 consecutive successes
    should_handle=custom_exception_handler,  # Custom exception filter
    on_status_change=status_change_handler  # Status change listener
)

@custom_protector
def monitored_service_call():
    # Your service call with enhanced monitoring
    pass
